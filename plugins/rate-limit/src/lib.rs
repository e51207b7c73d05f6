//! `rate-limit`: Weir policy: rate limits per consumer, client IP, header or route (token bucket or sliding window), with RateLimit headers (in progress).
