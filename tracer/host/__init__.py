"""Who is who on a Docker host: containers, veth pairs, bridges and
networks (the topology), and the same as a figure.  Shared by every command."""
