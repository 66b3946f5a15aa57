"""Every task and every piece of concurrency in roomcast lives in this package.

- `outbox`: a connection's bounded outgoing mailbox, in bytes, and its socket writer;
- `connection`: one actor per WebSocket;
- `room`: one actor per live room (the personal rooms and the broadcast lobby included);
- `registry`: the single writer of "which connections has user U" and "where is room R";
- `supervisor`: restart policy for the long-lived actors;
- `gateway`: the accept loop and the handshake that turns a socket into a connection.
"""
