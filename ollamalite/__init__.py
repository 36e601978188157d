"""ollamalite: the Ollama REST API over llama.cpp, in one process."""

__version__ = "0.1.0"
