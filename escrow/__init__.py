"""The escrow: notes, ledger, sessions and settlement (trusted core), and the host that serves it."""
