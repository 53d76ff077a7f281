"""Conversations, free of Discord: a request from settings and history, turns, continuation,
the footer's numbers, speakers and character cards."""
