"""The escrow's trusted core: runs inside the enclave."""
