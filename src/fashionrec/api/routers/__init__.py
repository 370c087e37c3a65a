"""One router per area of the API; `fashionrec.api.create_app` includes each module's `router`."""
