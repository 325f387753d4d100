"""Tokenizers: byte-fallback BPE/Unigram training, SentencePiece import, vocabulary expansion, coverage reports."""
