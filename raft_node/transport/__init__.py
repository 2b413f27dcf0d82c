"""How nodes and clients reach each other: framing, codec, the HMAC handshake and TCP.

``wire`` frames bytes, ``codec`` turns Raft messages and client payloads into msgpack, ``auth``
runs the mutual handshake, ``client_protocol`` validates client requests and responses, and
``tcp`` owns the sockets. The core never imports this room; the host hands it messages.
"""
