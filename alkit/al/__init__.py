"""The active-learning loop and its contracts: task, oracle, labeled pool, uncertainty measures."""
