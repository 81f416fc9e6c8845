"""The notification service: live events over Server-Sent Events, resumable, and an inbox."""
