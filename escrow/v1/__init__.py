"""Generated protobuf and gRPC code for the escrow.v1 contract (proto/escrow/v1/*.proto).

Do not edit the *_pb2*.py files: `make proto` regenerates them, and a test checks they are current.
"""
