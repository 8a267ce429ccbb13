process MODELS_PREPARE {
    // The checksums and the ready-to-load ESM-2 copy of a user's models directory, made once
    // into this task's own directory (symlinks to the originals beside them), so that no
    // task ever writes into the user's store and -resume hashes stay stable.
    tag "${models.name}"
    label 'process_medium'
    container 'ghcr.io/virnucpro/virnucpro:0.1.0-cpu'

    input:
    path models

    output:
    path "prepared"    , emit: models
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    virnucpro models prepare ${models} --outdir prepared --threads ${task.cpus} ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
    \$(virnucpro versions --indent 4)
    END_VERSIONS
    """

    stub:
    """
    mkdir -p prepared

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: 0.1.0
    END_VERSIONS
    """
}
