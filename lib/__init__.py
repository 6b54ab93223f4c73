"""The Wanda fork's import paths, for its users' snippets (`from lib.prune import check_sparsity`)."""
