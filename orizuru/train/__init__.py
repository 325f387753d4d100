"""Pre-training: text to token shards (`orizuru tokenize`), batches, and the training loop (`orizuru pretrain`)."""
