"""The untrusted host side: gRPC servicers, storage, and the server entry point."""
