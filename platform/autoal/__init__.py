"""autoal: Ray-native deep active learning."""
