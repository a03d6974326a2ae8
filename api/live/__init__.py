"""Live updates: the ordered event stream pushed to WebSocket and Server-Sent Events clients.

feed.py     follows the log (itself, or through Redis between instances) into the hub
hub.py      hands each change to the subscribers it concerns, with bounded queues
changes.py  an event rendered once for every live channel
websocket.py, events_stream.py   the two channels
"""
