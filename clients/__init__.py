"""Client libraries and command-line tools: vehicle, pole, issuer, auditor."""
