"""Core of the bot: configuration, model, engine, store and streaming. Knows nothing of Discord."""
