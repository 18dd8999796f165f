"""Packet evidence: captures taken as pcap, one decoder, and the pure judges of what they show."""
