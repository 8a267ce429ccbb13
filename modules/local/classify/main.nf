process CLASSIFY {
    tag "${meta.id}"
    label 'process_low'
    container 'ghcr.io/virnucpro/virnucpro:0.1.0-cpu'

    input:
    tuple val(meta), path(dnabert), path(esm2)
    path models
    val chunk_size

    output:
    tuple val(meta), path("${meta.shard}.scores.tsv") , emit: tsv
    tuple val(meta), path("${meta.shard}.scores.json"), emit: json
    path "versions.yml"                               , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    virnucpro classify ${dnabert} ${esm2} --models ${models} --chunk-size ${chunk_size} --outdir . --threads ${task.cpus} ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
    \$(virnucpro versions --indent 4)
    END_VERSIONS
    """

    stub:
    """
    touch ${meta.shard}.scores.tsv ${meta.shard}.scores.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: 0.1.0
    END_VERSIONS
    """
}
