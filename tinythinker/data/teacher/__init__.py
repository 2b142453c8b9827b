"""Teacher side: requests (REFERENCE 3), the OpenAI-compatible client, parsing and selection (REFERENCE 4-5)."""
