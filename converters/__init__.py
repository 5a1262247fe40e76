"""Export trained rerankers to mobile formats, validate them against the reference, pack bundles."""
