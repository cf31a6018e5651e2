"""The live event stream (`cntrace events`): kernel filters, the ring
buffer reader, attribution to containers and the text of an event.
Shared with trace-ping."""
