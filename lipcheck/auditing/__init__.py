"""The audit: the request, the loop over batches, ranks, resume journals and the worst-case search."""
