-- watchers(channel): KEYS[1] = the channel's watcher hash.
return watcher_sum(KEYS[1])
