process PREPARE {
    tag "${meta.id}"
    label 'process_low'
    container 'ghcr.io/virnucpro/virnucpro:0.1.0-cpu'

    input:
    tuple val(meta), path(shard)
    val chunk_size

    output:
    tuple val(meta), path("${meta.shard}.nucleotide.fa"), emit: nucleotide
    tuple val(meta), path("${meta.shard}.protein.faa")  , emit: protein
    tuple val(meta), path("${meta.shard}.sequences.tsv"), emit: sequences
    path "versions.yml"                                 , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    virnucpro prepare ${shard} --chunk-size ${chunk_size} --outdir . --prefix ${meta.shard} --threads ${task.cpus} ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
    \$(virnucpro versions --indent 4)
    END_VERSIONS
    """

    stub:
    """
    touch ${meta.shard}.nucleotide.fa ${meta.shard}.protein.faa ${meta.shard}.sequences.tsv

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: 0.1.0
    END_VERSIONS
    """
}
