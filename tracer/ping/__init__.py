"""trace-ping (`cntrace ping`): one probe sent from inside a container's
netns, its path hop by hop, the host's state along it and the diagnosis."""
