process SPLIT_FASTA {
    tag "${meta.id}"
    label 'process_single'
    container 'ghcr.io/virnucpro/virnucpro:0.1.0-cpu'

    input:
    tuple val(meta), path(fasta)
    val shard_size

    output:
    tuple val(meta), path("shards/shard_*.fa"), emit: shards
    path "versions.yml"                       , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    virnucpro split ${fasta} --shard-size ${shard_size} --outdir shards ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: \$(virnucpro --version | sed 's/^virnucpro //')
    END_VERSIONS
    """

    stub:
    """
    mkdir -p shards
    touch shards/shard_00001.fa

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: 0.1.0
    END_VERSIONS
    """
}
