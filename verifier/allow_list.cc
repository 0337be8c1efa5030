// allow_list: implementation in progress
