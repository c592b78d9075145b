"""LLM builders: tiny random-weight Llama (tiny.py) and real offline models (real.py); batch tokenizing (tokens.py)."""
