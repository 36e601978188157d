"""The inference engine: llama.cpp models and the thread that drives their decoding.

It speaks only in token ids, text pieces and plain Python objects; nothing here knows about
HTTP or asyncio beyond the callable each job hands in to receive its events.
"""
