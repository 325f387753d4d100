"""The LLaMA decoder, Hugging Face checkpoint I/O, LoRA, vocabulary resize, FLOPs, and sampling."""
