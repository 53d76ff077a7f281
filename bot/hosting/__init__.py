"""Which models serve where: the catalog of configured models, the scope's choice, the
registry that loads and evicts them within a memory budget, and the host the front-ends see."""
