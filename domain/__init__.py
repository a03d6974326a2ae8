"""The position domain: pure functions of events and commands. No I/O, no clock, no random ids."""
