"""Discord command families, one cog each, thin over `bot`."""
