"""Chat: conversations as token ids (template.py), for chat fine-tuning, `predict --chat` and the chat API."""
