"""Zero-knowledge core: BN254 G1 on gmpy2, Pedersen commitments, Bulletproofs, Schnorr proofs, envelopes.

Recipes for the rest of the product: zk.bn254, zk.pedersen, zk.rangeproof, zk.schnorr, zk.envelope.
The primitives below them (zk.g1, zk.msm, zk.field) are hazardous: unvalidated, variable-time.
"""
