"""How nodes and clients reach each other: framing, codec, the HMAC handshake and TCP.

``protocol`` is the node ``Transport`` contract, which ``tcp`` (sockets: ``connections`` accepts,
authenticates and reads frames, ``peers`` routes messages to peers) and ``memory`` (the in-process
twin for tests) implement. ``wire`` frames bytes, ``codec`` turns Raft messages and client
payloads into msgpack, ``auth`` runs the mutual handshake, and ``client_protocol`` validates
client requests and responses. The core never imports this room; the host hands it messages.
"""
