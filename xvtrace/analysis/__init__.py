"""Questions asked of the event table itself: the xenalyze-style summary and the dump."""
