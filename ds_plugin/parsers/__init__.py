"""ds_plugin.parsers"""
