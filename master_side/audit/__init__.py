"""The audit trail: transcripts on disk, the SQL index, their reads, search and retention."""
