"""The local model: a llama.cpp server run as a supervised child process, served like any upstream.

``discovery`` finds llama-cpp-python and a model file without importing native code,
``supervisor`` runs and restarts the child, ``child`` is what runs inside it, and ``upstream``
puts a fair queue in front of it and counts tokens with the model's own tokenizer.
"""
