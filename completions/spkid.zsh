#compdef spkid

_spkid_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _SPKID_COMPLETE=complete_zsh spkid)
}

compdef _spkid_completion spkid
