"""Storage behind CAS, ByteStream and the Action Cache (roles in `base`)."""

from redbarn.frontend.storage.base import ActionCacheStore, BlobStore, WriteSession

__all__ = ["ActionCacheStore", "BlobStore", "WriteSession"]
