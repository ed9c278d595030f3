"""kvserver: a small multi-threaded key-value server on a line protocol.

This is the case study for pyreload. Each directory under case-study/ holds
one complete version of the server; specs/ holds the updates between them.
"""
