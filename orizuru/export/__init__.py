"""`orizuru export`: model directories into other runtimes' formats (GGUF for llama.cpp)."""
