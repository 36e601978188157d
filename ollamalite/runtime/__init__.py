"""What runs models: the scheduler (which models are loaded, for whom) and the engine (one
thread per model batching every request's tokens into llama.cpp).
"""
