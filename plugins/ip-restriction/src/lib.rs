//! `ip-restriction`: Weir policy: allow and deny CIDR lists for IPv4 and IPv6 client addresses (in progress).
