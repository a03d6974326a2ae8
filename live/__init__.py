"""Live updates: the log's changes, in order, to every WebSocket and Server-Sent Events client.

changes.py       an event rendered once for every channel; the log read (between two positions,
                 or followed) as such changes
feed.py          follows the log (itself, or through Redis between instances) into the hub
hub.py           hands each change to the subscribers it concerns, with bounded queues
subscription.py  a subscriber consumed: its backlog, then its queue, each change once, sent
                 from a task that exists only while something is due

The channels themselves are routes (api/routes/websocket.py, api/routes/events_stream.py).
"""

from .changes import Change, LiveLog
from .feed import Feed
from .hub import Expired, Hub, HubClosed, Revoked, Subscriber, TooSlow
from .subscription import ClientLeft, Delivery, Owed

__all__ = [
    "Change",
    "ClientLeft",
    "Delivery",
    "Expired",
    "Feed",
    "Hub",
    "HubClosed",
    "LiveLog",
    "Owed",
    "Revoked",
    "Subscriber",
    "TooSlow",
]
