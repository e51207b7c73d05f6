//! `request-size-limit`: Weir policy: 413 for request bodies past a size (in progress).
