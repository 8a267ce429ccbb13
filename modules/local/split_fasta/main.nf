process SPLIT_FASTA {
    tag "${meta.id}"
    label 'process_single'
    container 'ghcr.io/virnucpro/virnucpro:0.1.0-cpu'

    input:
    tuple val(meta), path(fasta)
    val shard_size

    output:
    tuple val(meta), path("shards/shard_*.fa"), emit: shards
    tuple val(meta), path("shards/shards.tsv"), emit: manifest
    path "versions.yml"                       , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    virnucpro split ${fasta} --shard-size ${shard_size} --outdir shards --threads ${task.cpus} ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
    \$(virnucpro versions --indent 4)
    END_VERSIONS
    """

    stub:
    """
    mkdir -p shards
    touch shards/shard_00001.fa
    printf 'shard\\tsequence_id\\tlength\\n' > shards/shards.tsv

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: 0.1.0
    END_VERSIONS
    """
}
