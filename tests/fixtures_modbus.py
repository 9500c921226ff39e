"""Modbus peers: the simulator over TCP and over a socat pty pair."""
