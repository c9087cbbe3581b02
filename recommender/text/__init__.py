"""Text: Romanian normalization, the HTML tokenizer, page rewriting and named entities.

The lowest floor of the library: pure functions over strings, no store, no index.
"""
